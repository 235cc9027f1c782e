"""``mindsearch serve``: a warm query service over one long-lived Engine (see docs/interfaces.md,
"Service"). ``backend`` holds the work, ``app`` the HTTP routes, ``client`` the CLI's side."""
