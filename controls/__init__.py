"""tripwire.controls"""
