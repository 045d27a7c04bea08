"""The hot tier: recent events per (user, type) and the users' inactivity schedule."""
