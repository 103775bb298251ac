"""kiln.testing"""
