"""Library code shared by the workflows and activities: models, policy, commands, transport."""
