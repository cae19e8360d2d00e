"""userlm-local inside other programs: ``user.SimulatedUserModel``, the one object every harness
adapter is a thin layer on (ask it for the next user turn of an OpenAI-format conversation)."""
