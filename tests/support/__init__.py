"""Helpers shared by the tests: live servers, the Hub-shaped server, GPT-2 reference maths."""
