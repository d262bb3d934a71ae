module example.com/flowstate-lifecycle

go 1.26.0

require flowstate.dev/client v0.1.0
