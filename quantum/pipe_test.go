package quantum

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"
)

func TestPipeOrderedWhole(t *testing.T) {
	a, b := Pipe()
	ctx := context.Background()
	const n = 1000
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := range n {
			msg := []byte(fmt.Sprintf("msg-%d", i))
			if err := a.Send(ctx, msg); err != nil {
				t.Errorf("send %d: %v", i, err)
				return
			}
			msg[0] = 'X' // the pipe must have copied it
		}
	}()
	for i := range n {
		m, err := b.Recv(ctx)
		if err != nil {
			t.Fatalf("recv %d: %v", i, err)
		}
		if want := fmt.Sprintf("msg-%d", i); string(m) != want {
			t.Fatalf("recv %d = %q, want %q", i, m, want)
		}
	}
	wg.Wait()
}

func TestPipeBothDirectionsSimultaneousSend(t *testing.T) {
	a, b := Pipe()
	ctx := context.Background()
	// Both send before either receives: must not deadlock.
	if err := a.Send(ctx, []byte("from a")); err != nil {
		t.Fatal(err)
	}
	if err := b.Send(ctx, []byte("from b")); err != nil {
		t.Fatal(err)
	}
	mb, _ := b.Recv(ctx)
	ma, _ := a.Recv(ctx)
	if !bytes.Equal(mb, []byte("from a")) || !bytes.Equal(ma, []byte("from b")) {
		t.Fatalf("got %q / %q", ma, mb)
	}
}

func TestPipeContext(t *testing.T) {
	a, _ := Pipe()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	if _, err := a.Recv(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Recv err = %v, want deadline exceeded", err)
	}
	cctx, c2 := context.WithCancel(context.Background())
	c2()
	if err := a.Send(cctx, []byte("x")); !errors.Is(err, context.Canceled) {
		t.Fatalf("Send err = %v, want canceled", err)
	}
}

func TestPipeCloseGivesLinkDown(t *testing.T) {
	a, b := Pipe()
	ctx := context.Background()
	got := make(chan error, 1)
	go func() {
		_, err := b.Recv(ctx) // blocked when a closes
		got <- err
	}()
	time.Sleep(5 * time.Millisecond)
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	if err := <-got; !errors.Is(err, ErrLinkDown) {
		t.Fatalf("blocked Recv err = %v, want ErrLinkDown", err)
	}
	if err := b.Send(ctx, []byte("x")); !errors.Is(err, ErrLinkDown) {
		t.Fatalf("Send after peer close = %v, want ErrLinkDown", err)
	}
	if _, err := a.Recv(ctx); !errors.Is(err, ErrLinkDown) {
		t.Fatalf("Recv on closed end = %v, want ErrLinkDown", err)
	}
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
}
