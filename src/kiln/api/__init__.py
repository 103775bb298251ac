"""kiln.api"""
