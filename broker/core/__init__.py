"""What every source of tasks shares: router, task, errors, settings, plugins, the
handler step and the completer."""
