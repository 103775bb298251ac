"""kiln.plan"""
