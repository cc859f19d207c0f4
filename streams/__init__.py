"""tripwire.streams"""
