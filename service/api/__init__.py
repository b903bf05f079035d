"""HTTP layer: one router per resource; it knows the runtime, the runtime knows no HTTP."""
