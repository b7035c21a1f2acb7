"""One image, and no database: the network guard, the fetcher, the recompression engines and
the budgets that bound their memory."""
