package session

import (
	"context"
	"errors"
	"testing"
	"time"

	"qkdkms/quantum"
)

func envelopeOf(typ uint8, id [16]byte, payload string) []byte {
	return append(append([]byte{typ}, id[:]...), payload...)
}

// muxPipe is a Mux for the session finishing on one end of a pipe, the
// peer's end (which send writes to), and a context bounding the test.
func muxPipe(t *testing.T, finishing [16]byte) (ctx context.Context, m *Mux, own, peer *quantum.PipeEnd, send func(...[]byte)) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	peer, own = quantum.Pipe()
	t.Cleanup(func() {
		cancel()
		peer.Close()
		own.Close()
	})
	send = func(msgs ...[]byte) {
		for _, x := range msgs {
			if err := peer.Send(ctx, x); err != nil {
				t.Fatal(err)
			}
		}
	}
	return ctx, NewMux(own, finishing), own, peer, send
}

// TestMuxRoutes: messages of the finishing session reach its lane, other
// session messages the next lane, in order, whichever lane reads the
// channel; a message of the peer's own ends both lanes (ErrLanesEnded) and
// After returns it, skipping session messages nobody read; nothing after
// it is taken from the channel.
func TestMuxRoutes(t *testing.T) {
	fin, next := [16]byte{1}, [16]byte{2}
	ctx, m, own, _, send := muxPipe(t, fin)
	send(envelopeOf(tStep, next, "n1"), envelopeOf(tStep, next, "n2"), envelopeOf(tStep, fin, "f1"))
	// The finishing lane reads past the next lane's two messages.
	if got, err := m.Finishing().Recv(ctx); err != nil || string(got[17:]) != "f1" {
		t.Fatalf("finishing lane got %q, %v", got, err)
	}
	for _, want := range []string{"n1", "n2"} {
		if got, err := m.Next().Recv(ctx); err != nil || string(got[17:]) != want {
			t.Fatalf("next lane got %q, %v; want %s", got, err, want)
		}
	}
	// Both lanes wait; one message for each arrives.
	got := make(chan string, 2)
	for _, l := range []quantum.Channel{m.Finishing(), m.Next()} {
		go func() {
			b, err := l.Recv(ctx)
			if err != nil {
				got <- err.Error()
				return
			}
			got <- string(b[17:])
		}()
	}
	send(envelopeOf(tFin, fin, "f2"), envelopeOf(tStep, next, "n3"))
	seen := map[string]bool{<-got: true, <-got: true}
	if !seen["f2"] || !seen["n3"] {
		t.Fatalf("lanes got %v", seen)
	}
	// A leftover session message, then the peer's own message and one more.
	send(envelopeOf(tAbort, next, "late"), []byte(`{"type":"ahead"}`), []byte(`{"type":"commit"}`))
	if _, err := m.Finishing().Recv(ctx); !errors.Is(err, ErrLanesEnded) {
		t.Fatalf("finishing lane after the peer's own message: %v, want ErrLanesEnded", err)
	}
	if b, err := m.Next().Recv(ctx); err != nil || string(b[17:]) != "late" {
		t.Fatalf("next lane got %q, %v; want the queued late message first", b, err)
	}
	if _, err := m.Next().Recv(ctx); !errors.Is(err, ErrLanesEnded) {
		t.Fatalf("next lane after the peer's own message: %v, want ErrLanesEnded", err)
	}
	if b, err := m.After().Recv(ctx); err != nil || string(b) != `{"type":"ahead"}` {
		t.Fatalf("After got %q, %v", b, err)
	}
	if b, err := own.Recv(ctx); err != nil || string(b) != `{"type":"commit"}` {
		t.Fatalf("the channel after the Mux: %q, %v", b, err)
	}
}

// TestMuxAfterSkipsLeftovers: After skips session messages that arrive
// before the peer's own message (a session aborted at the peer, which
// stopped reading here).
func TestMuxAfterSkipsLeftovers(t *testing.T) {
	ctx, m, _, _, send := muxPipe(t, [16]byte{1})
	send(envelopeOf(tStep, [16]byte{2}, "x"), envelopeOf(tAbort, [16]byte{1}, "y"), []byte(`{"type":"ahead"}`))
	if got, err := m.After().Recv(ctx); err != nil || string(got) != `{"type":"ahead"}` {
		t.Fatalf("After got %q, %v", got, err)
	}
}

// TestMuxChannelFails: a failed channel fails both lanes, also the one
// that was only waiting.
func TestMuxChannelFails(t *testing.T) {
	ctx, m, _, peer, _ := muxPipe(t, [16]byte{1})
	errs := make(chan error, 2)
	for _, l := range []quantum.Channel{m.Finishing(), m.Next()} {
		go func() {
			_, err := l.Recv(ctx)
			errs <- err
		}()
	}
	peer.Close()
	for range 2 {
		if err := <-errs; !errors.Is(err, quantum.ErrLinkDown) {
			t.Fatalf("lane error %v, want ErrLinkDown", err)
		}
	}
}
