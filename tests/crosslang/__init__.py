"""Cross-language tests: the Go, TypeScript and Python clients against one server."""
