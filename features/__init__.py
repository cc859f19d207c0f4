"""tripwire.features"""
