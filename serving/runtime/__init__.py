"""The local server runtime: launcher, front door, supervision, admin secret, shared-memory guard, reaper."""
