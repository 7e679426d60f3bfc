package testenv

import (
	"log/slog"
	"strings"
	"sync"
	"testing"
)

// Logger is a slog.Logger that writes to tb.Log at level and above, until
// the cleanups registered before it have run: code that outlives the test
// (a node stopping in a later cleanup, a goroutine that logs late) must not
// call tb.Log after the test completed, which panics.
func Logger(tb testing.TB, level slog.Level) *slog.Logger {
	w := &tbWriter{tb: tb}
	tb.Cleanup(func() {
		w.mu.Lock()
		w.done = true
		w.mu.Unlock()
	})
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: level}))
}

type tbWriter struct {
	mu   sync.Mutex
	tb   testing.TB
	done bool
}

func (w *tbWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.done {
		w.tb.Log(strings.TrimSuffix(string(p), "\n"))
	}
	return len(p), nil
}
