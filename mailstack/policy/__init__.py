"""mailstack.policy"""
