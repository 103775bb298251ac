"""kiln.emulator"""
