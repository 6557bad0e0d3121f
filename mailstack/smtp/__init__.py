"""mailstack.smtp"""
