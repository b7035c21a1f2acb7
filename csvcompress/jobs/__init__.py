"""Working through a request: lifecycle (every status change), dispatcher (who takes which
image), processor (one image), recorder (results in batches), output (finishing a request)."""
