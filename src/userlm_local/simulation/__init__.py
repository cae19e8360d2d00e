"""Simulated users and their conversations: ``user`` (a local UserLM's turns), ``remote_user`` (one behind
a completions server), ``guardrails`` (the paper's four, and the redraw loop both share), ``converse`` (the
one conversation loop; ``EndedBy``, ``Outcome``), ``campaign`` and ``ray_campaign`` (intents x trials),
``build`` (a campaign from a typed ``CampaignSpec``), ``transcripts`` (record sinks: a locked JSONL, memory),
``intent_sets`` and ``prompted`` (the paper's prompted-assistant baseline)."""
