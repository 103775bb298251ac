"""kiln.machine"""
