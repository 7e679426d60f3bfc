package devstream

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"os"
	"reflect"
	"sync"
	"testing"
	"time"

	"qkdkms/quantum"
)

func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(tlogWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type tlogWriter struct{ t *testing.T }

func (w tlogWriter) Write(p []byte) (int, error) {
	w.t.Log(string(bytes.TrimRight(p, "\n")))
	return len(p), nil
}

func TestTransmitter(t *testing.T) {
	ctx := context.Background()
	const n = 1001
	as, _ := randomFrames(7, 2, n, false)
	h := testHeader(RoleAlice)
	tx, err := NewTransmitter(ctx, bytes.NewReader(encodeAlice(t, h, as)), Options{Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	if got := tx.Header().Device; got != h.Device {
		t.Errorf("device %q", got)
	}
	if f, p, err := tx.Next(ctx); err != nil || f != as[0].Frame || p != n {
		t.Fatalf("Next = %d, %d, %v; want %d, %d", f, p, err, as[0].Frame, n)
	}
	// mismatches leave the record next
	for _, bad := range []struct{ frame, n uint64 }{{as[0].Frame + 1, n}, {as[0].Frame, n - 1}} {
		if _, err := tx.Send(ctx, bad.frame, bad.n); !errors.Is(err, ErrFrameMismatch) {
			t.Fatalf("Send(%d, %d): %v, want ErrFrameMismatch", bad.frame, bad.n, err)
		} else {
			t.Log(err)
		}
	}
	for _, f := range as {
		st, err := tx.Send(ctx, f.Frame, n)
		if err != nil {
			t.Fatal(err)
		}
		var sum uint64
		for _, c := range st.PerIntensity {
			sum += c
		}
		if st.Pulses != n || sum != n || len(st.PerIntensity) != 3 || !reflect.DeepEqual(st.Intensities, h.Intensities) || st.Seconds != n/h.PulseRate {
			t.Fatalf("stats %+v", st)
		}
		if !reflect.DeepEqual(st.PerIntensity, f.PerIntensity(3)) {
			t.Fatalf("PerIntensity %v, want %v", st.PerIntensity, f.PerIntensity(3))
		}
		idx := []uint64{n - 1, 0, 500, 3}
		recs, err := tx.Choices(f.Frame, idx)
		if err != nil {
			t.Fatal(err)
		}
		for j, i := range idx {
			if recs[j] != f.At(i) || recs[j].Index != i {
				t.Fatalf("Choices[%d] = %+v, want %+v", j, recs[j], f.At(i))
			}
		}
		if _, err := tx.Choices(f.Frame, []uint64{n}); !errors.Is(err, ErrUnknownPulse) {
			t.Fatalf("index n: %v", err)
		}
	}
	tx.Release(as[0].Frame)
	if _, err := tx.Choices(as[0].Frame, []uint64{0}); !errors.Is(err, ErrUnknownPulse) {
		t.Fatalf("released frame: %v", err)
	}
	if _, err := tx.Choices(as[1].Frame, []uint64{0}); err != nil {
		t.Fatalf("frame still held: %v", err)
	}
	_, err = tx.Send(ctx, 99, n)
	if !errors.Is(err, ErrEndOfStream) || !errors.Is(err, quantum.ErrLinkDown) {
		t.Fatalf("past the end: %v, want ErrEndOfStream", err)
	}
}

func TestReceiverSquashing(t *testing.T) {
	ctx := context.Background()
	_, bs := randomFrames(9, 2, 20000, true)
	h := testHeader(RoleBob)
	stream := encodeBob(t, h, bs)
	for _, tc := range []struct {
		name string
		rand io.Reader
		want int // -1: both values
	}{
		{"zeros", bytes.NewReader(make([]byte, 1<<16)), 0},
		{"ones", bytes.NewReader(bytes.Repeat([]byte{0xff}, 1<<16)), 1},
		{"crypto", nil, -1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rx, err := NewReceiver(ctx, bytes.NewReader(stream), Options{Rand: tc.rand, Logger: testLogger(t)})
			if err != nil {
				t.Fatal(err)
			}
			var count [2]int
			for _, f := range bs {
				dets, err := rx.Receive(ctx, f.Frame, f.Pulses)
				if err != nil {
					t.Fatal(err)
				}
				if len(dets) != len(f.Clicks) {
					t.Fatalf("%d detections, want %d", len(dets), len(f.Clicks))
				}
				for i, c := range f.Clicks {
					d := dets[i]
					if d.Index != c.Index || d.Basis != c.Basis || d.Bit > 1 {
						t.Fatalf("detection %d = %+v from %+v", i, d, c)
					}
					if !c.Double {
						if d.Bit != c.Bit {
							t.Fatalf("single click %d changed bit", c.Index)
						}
						continue
					}
					count[d.Bit]++
				}
			}
			t.Logf("double clicks squashed to 0: %d, to 1: %d", count[0], count[1])
			switch tc.want {
			case 0, 1:
				if count[1-tc.want] != 0 || count[tc.want] == 0 {
					t.Fatalf("squashed bits %v, want all %d", count, tc.want)
				}
			default:
				// 0 and 1 each with probability 1/2: fewer than 35% of
				// either in ~200 double clicks has probability < 1e-4
				tot := count[0] + count[1]
				if tot < 100 || count[0] < tot*35/100 || count[1] < tot*35/100 {
					t.Fatalf("squashed bits %v not balanced", count)
				}
			}
		})
	}
	rx, err := NewReceiver(ctx, bytes.NewReader(stream), Options{Rand: bytes.NewReader(nil)})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := rx.Receive(ctx, bs[0].Frame, bs[0].Pulses); err == nil {
		t.Fatal("squashing without randomness succeeded")
	}
}

func TestDriverErrors(t *testing.T) {
	ctx := context.Background()
	as, bs := randomFrames(11, 2, 100, false)
	alice := encodeAlice(t, testHeader(RoleAlice), as)
	bob := encodeBob(t, testHeader(RoleBob), bs)

	if _, err := NewTransmitter(ctx, bytes.NewReader(bob), Options{}); !errors.Is(err, ErrRole) {
		t.Errorf("transmitter on a Bob stream: %v", err)
	}
	if _, err := NewReceiver(ctx, bytes.NewReader(alice), Options{}); !errors.Is(err, ErrRole) {
		t.Errorf("receiver on an Alice stream: %v", err)
	}
	if _, err := NewReceiver(ctx, bytes.NewReader(bob[:10]), Options{}); !errors.Is(err, ErrTruncated) {
		t.Errorf("truncated header: %v", err)
	}

	// a bad CRC in the second frame: the first is served, the second fails
	// and the driver stays broken
	bad := append([]byte(nil), alice...)
	bad[len(bad)-10] ^= 1
	tx, err := NewTransmitter(ctx, bytes.NewReader(bad), Options{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Send(ctx, as[0].Frame, 100); err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Send(ctx, as[1].Frame, 100); !errors.Is(err, ErrCRC) {
		t.Fatalf("corrupt frame: %v, want ErrCRC", err)
	}
	if _, _, err := tx.Next(ctx); !errors.Is(err, ErrBroken) || !errors.Is(err, ErrCRC) {
		t.Fatalf("after a decode error: %v, want ErrBroken", err)
	}

	// a truncated Bob stream
	rx, err := NewReceiver(ctx, bytes.NewReader(bob[:len(bob)-3]), Options{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := rx.Receive(ctx, bs[0].Frame, 100); err != nil {
		t.Fatal(err)
	}
	if _, err := rx.Receive(ctx, bs[1].Frame, 100); !errors.Is(err, ErrTruncated) {
		t.Fatalf("truncated frame: %v, want ErrTruncated", err)
	}
}

// blockingReader blocks every Read until it is closed, signalling entry.
type blockingReader struct {
	entered chan struct{}
	once    sync.Once
	closed  chan struct{}
}

func newBlockingReader() *blockingReader {
	return &blockingReader{entered: make(chan struct{}), closed: make(chan struct{})}
}

func (r *blockingReader) Read([]byte) (int, error) {
	r.once.Do(func() { close(r.entered) })
	<-r.closed
	return 0, os.ErrClosed
}

func (r *blockingReader) Close() error { close(r.closed); return nil }

// deadlineReader serves a header, then blocks until a past read deadline
// is set.
type deadlineReader struct {
	head     *bytes.Reader
	entered  chan struct{}
	once     sync.Once
	mu       sync.Mutex
	deadline chan struct{}
	returned chan struct{}
}

func (r *deadlineReader) Read(p []byte) (int, error) {
	if r.head.Len() > 0 {
		return r.head.Read(p)
	}
	r.once.Do(func() { close(r.entered) })
	<-r.deadline
	close(r.returned)
	return 0, os.ErrDeadlineExceeded
}

func (r *deadlineReader) SetReadDeadline(t time.Time) error {
	if !t.IsZero() && t.Before(time.Now()) {
		r.mu.Lock()
		defer r.mu.Unlock()
		select {
		case <-r.deadline:
		default:
			close(r.deadline)
		}
	}
	return nil
}

func TestCancelBlockedRead(t *testing.T) {
	header := appendHeader(nil, testHeader(RoleAlice))

	t.Run("reader closed by the caller", func(t *testing.T) {
		br := newBlockingReader()
		tx, err := NewTransmitter(context.Background(), io.MultiReader(bytes.NewReader(header), br), Options{})
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		go func() { <-br.entered; cancel() }()
		if _, err := tx.Send(ctx, 1, 10); !errors.Is(err, context.Canceled) {
			t.Fatalf("Send: %v, want context.Canceled", err)
		}
		if _, err := tx.Send(context.Background(), 1, 10); !errors.Is(err, ErrBroken) {
			t.Fatalf("after cancel: %v, want ErrBroken", err)
		}
		br.Close() // what the owner of the reader does; releases the read
	})

	t.Run("read deadline", func(t *testing.T) {
		dr := &deadlineReader{head: bytes.NewReader(header), entered: make(chan struct{}), deadline: make(chan struct{}), returned: make(chan struct{})}
		tx, err := NewTransmitter(context.Background(), dr, Options{})
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		go func() { <-dr.entered; cancel() }()
		if _, _, err := tx.Next(ctx); !errors.Is(err, context.Canceled) {
			t.Fatalf("Next: %v, want context.Canceled", err)
		}
		<-dr.returned // the past deadline ended the blocked read
		if _, err := tx.Send(context.Background(), 1, 10); !errors.Is(err, ErrBroken) {
			t.Fatalf("after cancel: %v, want ErrBroken", err)
		}
	})

	t.Run("cancelled before reading", func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		if _, err := NewTransmitter(ctx, newBlockingReader(), Options{}); !errors.Is(err, context.Canceled) {
			t.Fatalf("NewTransmitter: %v", err)
		}
	})
}
