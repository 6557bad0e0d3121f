"""mailstack.pop3"""
