"""Measuring simulated users: ``scoring`` (teacher-forced scoring of held-out conversations, first turns,
campaign behaviour), ``metrics/`` (the paper's metrics as pure functions), ``preservation`` (REF vs
candidates, behind ``bench``), ``report`` (its JSON, Markdown and HTML) and ``prompted`` (scoring the
prompted baseline)."""
