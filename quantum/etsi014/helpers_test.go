package etsi014

import (
	"bytes"
	"log/slog"
	"sync"
	"testing"
)

// newEmulator starts an emulator with its PKI under a test directory.
func newEmulator(t *testing.T, cfg EmulatorConfig) *Emulator {
	t.Helper()
	cfg.Dir = t.TempDir()
	e, err := NewEmulator(cfg)
	if err != nil {
		t.Fatalf("NewEmulator: %v", err)
	}
	t.Cleanup(func() {
		if err := e.Close(); err != nil {
			t.Errorf("emulator Close: %v", err)
		}
	})
	return e
}

// newClient is a driver for d's site, its options changed by edit.
func newClient(t *testing.T, d *Device, log *slog.Logger, edit func(*Options)) *Client {
	t.Helper()
	o := d.Options()
	if edit != nil {
		edit(&o)
	}
	c, err := New(o, log)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// logBuffer collects JSON log lines from any goroutine.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *logBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *logBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// captureLog is a debug-level logger writing JSON into a logBuffer.
func captureLog() (*slog.Logger, *logBuffer) {
	b := &logBuffer{}
	return slog.New(slog.NewJSONHandler(b, &slog.HandlerOptions{Level: slog.LevelDebug})), b
}

func discardLog() *slog.Logger { return slog.New(slog.DiscardHandler) }
