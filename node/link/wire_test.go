package link

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"net"
	"runtime"
	"testing"
	"time"

	"qkdkms/quantum"
)

// TestWireMultiplexes: classical messages, driver frames and commit
// messages share one connection, each kind in order; closing one end fails both ends with
// quantum.ErrLinkDown.
func TestWireMultiplexes(t *testing.T) {
	ca, cb := net.Pipe()
	a, b := newWire(ca), newWire(cb)
	defer a.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	frame := []byte("a driver's frame")
	go func() {
		_ = a.Send(ctx, []byte("one"))
		_ = quantumTransport{a}.SendFrame(ctx, frame)
		_ = commitLink{a}.Send(ctx, []byte("commit"))
		_ = a.Send(ctx, []byte("two"))
	}()
	got, err := quantumTransport{b}.RecvFrame(ctx)
	if err != nil || !bytes.Equal(got, frame) {
		t.Fatalf("frame: %q, %v", got, err)
	}
	if got, err := (commitLink{b}).Recv(ctx); err != nil || string(got) != "commit" {
		t.Fatalf("commit queue: %q, %v", got, err)
	}
	for _, want := range []string{"one", "two"} {
		m, err := b.Recv(ctx)
		if err != nil || !bytes.Equal(m, []byte(want)) {
			t.Fatalf("message %q: got %q, %v", want, m, err)
		}
	}
	short, cancelShort := context.WithTimeout(ctx, 50*time.Millisecond)
	defer cancelShort()
	if _, err := b.Recv(short); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Recv with nothing sent: %v", err)
	}
	_ = a.Close()
	if _, err := b.Recv(ctx); !errors.Is(err, quantum.ErrLinkDown) {
		t.Fatalf("Recv after the peer closed: %v", err)
	}
	if err := b.Send(ctx, []byte("x")); !errors.Is(err, quantum.ErrLinkDown) {
		t.Fatalf("Send after the peer closed: %v", err)
	}
}

// TestWireRefusesOversizedAndUnknown: a peer announcing an absurd length
// or an unknown kind brings the wire down instead of allocating.
func TestWireRefusesOversizedAndUnknown(t *testing.T) {
	for _, hdr := range [][]byte{{kindClassical, 0xff, 0xff, 0xff, 0xff}, {'Z', 0, 0, 0, 1, 0}} {
		ca, cb := net.Pipe()
		w := newWire(cb)
		go func() { _, _ = ca.Write(hdr) }()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		if _, err := w.Recv(ctx); !errors.Is(err, quantum.ErrLinkDown) {
			t.Fatalf("header %x: %v", hdr, err)
		}
		cancel()
		_ = ca.Close()
	}
}

// TestWireAllocatesAsDataArrives: a header announcing the largest message
// followed by a few bytes does not make the reader allocate the announced
// length (a peer could otherwise pin 256 MiB per connection with 5 bytes).
func TestWireAllocatesAsDataArrives(t *testing.T) {
	ca, cb := net.Pipe()
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	w := newWire(cb)
	hdr := []byte{kindClassical, 0, 0, 0, 0}
	binary.BigEndian.PutUint32(hdr[1:], maxMessage)
	if _, err := ca.Write(append(hdr, "a few bytes"...)); err != nil {
		t.Fatal(err)
	}
	_ = ca.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := w.Recv(ctx); !errors.Is(err, quantum.ErrLinkDown) {
		t.Fatalf("Recv of a truncated message: %v", err)
	}
	runtime.ReadMemStats(&after)
	if grew := after.TotalAlloc - before.TotalAlloc; grew > 16<<20 {
		t.Fatalf("reading a 5-byte header and 11 bytes allocated %d MiB", grew>>20)
	}
}

// BenchmarkWireRoundTrip: one classical message each way between two
// wires over loopback TCP (what every Cascade round costs the live link
// beyond the post-processing itself, TLS aside).
func BenchmarkWireRoundTrip(b *testing.B) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, _ := ln.Accept()
		accepted <- c
	}()
	ca, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		b.Fatal(err)
	}
	a, z := newWire(ca), newWire(<-accepted)
	defer a.Close()
	defer z.Close()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	msg := make([]byte, 200)
	go func() {
		for {
			m, err := z.Recv(ctx)
			if err != nil {
				return
			}
			if z.Send(ctx, m) != nil {
				return
			}
		}
	}()
	b.ResetTimer()
	for range b.N {
		if err := a.Send(ctx, msg); err != nil {
			b.Fatal(err)
		}
		if _, err := a.Recv(ctx); err != nil {
			b.Fatal(err)
		}
	}
}
