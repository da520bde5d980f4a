"""An application with its own background job on Herald's task module: see README "Your own background jobs"."""
