# A module's health window short enough for a real server's real time.
FAST_HEALTH = {"stable_seconds": 1, "timeout_seconds": 5, "poll_seconds": 1}
