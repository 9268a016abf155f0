"""The spotrelay node agent: IMDSv2 monitors and the drain state machine."""
