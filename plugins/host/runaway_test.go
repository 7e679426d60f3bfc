package host_test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"runtime"
	"strings"
	"testing"
	"time"

	"qkdkms/plugins/host"
	"qkdkms/plugins/instrument/wasmtest"
	"qkdkms/plugins/steps"
)

func addModule(t testing.TB, h *host.Host, name string, wasm []byte) {
	t.Helper()
	sum := sha256.Sum256(wasm)
	info := host.Info{Name: name, Kind: steps.Reconcile, Version: "0.0.1", ABI: 1, SHA256: hex.EncodeToString(sum[:])}
	if err := h.Add(context.Background(), info, wasm); err != nil {
		t.Fatal(err)
	}
}

// runOnce creates an instance of the reconcile plugin name and takes one step.
func runOnce(ctx context.Context, h *host.Host, name string) error {
	r, err := h.Runner(host.Selection{steps.Reconcile: name})
	if err != nil {
		return err
	}
	inst, err := r.New(ctx, steps.Reconcile, steps.Alice, nil, nil)
	if err != nil {
		return err
	}
	defer inst.Close(ctx)
	_, err = inst.Step(ctx, steps.Input{Data: []byte{1}})
	return err
}

// TestRunawayPlugins: a plugin that never returns, wherever it hangs, fails
// with a "deadline exceeded" trap (it is not waited for forever, and the
// trial module without a hang passes).
func TestRunawayPlugins(t *testing.T) {
	ctx := context.Background()
	h := openHost(t, host.Options{CallTimeout: 200 * time.Millisecond})
	addModule(t, h, "fine", wasmtest.ABIModule(""))
	if err := runOnce(ctx, h, "fine"); err != nil {
		t.Fatalf("the module without a hang: %v", err)
	}
	for _, hang := range []string{"_initialize", "qkd_abi_version", "qkd_alloc", "qkd_new", "qkd_step", "qkd_result_ptr", "qkd_result_len", "recursion"} {
		t.Run(hang, func(t *testing.T) {
			addModule(t, h, "hang-"+hang, wasmtest.ABIModule(hang))
			start := time.Now()
			err := runOnce(ctx, h, "hang-"+hang)
			if !errors.Is(err, host.ErrTrap) || !strings.Contains(err.Error(), "deadline exceeded") {
				t.Fatalf("want a deadline-exceeded trap, got %v", err)
			}
			t.Logf("%v after %v", err, time.Since(start).Round(time.Millisecond))
		})
	}
}

// TestRunawayDoesNotBlockGC: while a plugin loops, garbage collections
// (each stops the world) keep completing. Without instrumentation the first
// collection after the plugin entered its loop waited for the call to end,
// so only those started before it (0 to 2 here) could finish; with it,
// hundreds complete on an idle machine and tens on a loaded one.
//
// Only the looping call is measured: the instance is made first. Earlier
// this test measured from before the instance was made, and in two
// clean-clone make test runs (of about twelve) one collection took 3.9 s,
// the whole measurement, with the call ending about 1 s after the step
// began (its own deadline): the time went before the step, into making
// the instance. The step's call ending far past its deadline would mean
// the whole process stood still (the plugin yields, and the deadline is
// checked at every yield); such a run is measured again once.
func TestRunawayDoesNotBlockGC(t *testing.T) {
	ctx := context.Background()
	const timeout = time.Second
	h := openHost(t, host.Options{CallTimeout: timeout})
	addModule(t, h, "hang", wasmtest.ABIModule("qkd_step"))
	r, err := h.Runner(host.Selection{steps.Reconcile: "hang"})
	if err != nil {
		t.Fatal(err)
	}
	for attempt := 1; ; attempt++ {
		t0 := time.Now()
		inst, err := r.New(ctx, steps.Reconcile, steps.Alice, nil, nil)
		if err != nil {
			t.Fatal(err)
		}
		made := time.Since(t0)
		done := make(chan error, 1)
		start := time.Now()
		go func() {
			_, err := inst.Step(ctx, steps.Input{Data: []byte{1}})
			done <- err
		}()
		gcs := 0
		var longest time.Duration // the longest single collection
	loop:
		for {
			select {
			case err = <-done:
				break loop
			default:
				t0 := time.Now()
				runtime.GC()
				longest = max(longest, time.Since(t0))
				gcs++
			}
		}
		call := time.Since(start)
		inst.Close(ctx)
		if !errors.Is(err, host.ErrTrap) {
			t.Fatalf("want a trap, got %v", err)
		}
		t.Logf("%d collections completed during the looping call (%v; the longest took %v; the instance took %v to make)", gcs, call, longest, made)
		if gcs >= 10 {
			return
		}
		if call < 2*timeout || attempt == 2 {
			t.Fatalf("only %d collections completed during the plugin call", gcs)
		}
		t.Log("the call ended far past its deadline: the process stood still; measuring again")
	}
}
