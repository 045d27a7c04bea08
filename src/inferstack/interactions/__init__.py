"""The interaction store: users' recent events, hot while they are active, cold after."""
