package host

import (
	"context"
	"fmt"

	"qkdkms/plugins/steps"
)

// Transcript records what one party's instance produced, call by call.
type Transcript struct {
	Msgs [][]byte
}

// RunPair drives Alice's and Bob's instances of one step to completion in
// process, handing each message to the other side. It is the in-process
// equivalent of two sessions talking over a channel; tests and benchmarks
// use it. The transcripts hold every message each side sent.
func RunPair(ctx context.Context, a, b Instance, inA, inB []byte) (ra, rb steps.Result, ta, tb Transcript, err error) {
	if ra, err = a.Step(ctx, steps.Input{Data: inA}); err != nil {
		return
	}
	if rb, err = b.Step(ctx, steps.Input{Data: inB}); err != nil {
		return
	}
	for i := 0; !(ra.Done && rb.Done); i++ {
		switch {
		case ra.HasMsg && !rb.Done:
			m := ra.Msg
			ta.Msgs = append(ta.Msgs, m)
			ra.HasMsg = false
			if rb, err = b.Step(ctx, steps.Input{Peer: m, HasPeer: true}); err != nil {
				return
			}
		case rb.HasMsg && !ra.Done:
			m := rb.Msg
			tb.Msgs = append(tb.Msgs, m)
			rb.HasMsg = false
			if ra, err = a.Step(ctx, steps.Input{Peer: m, HasPeer: true}); err != nil {
				return
			}
		default:
			err = fmt.Errorf("%w: both parties wait (alice done=%v, bob done=%v)", steps.ErrProtocol, ra.Done, rb.Done)
			return
		}
	}
	if ra.HasMsg {
		ta.Msgs = append(ta.Msgs, ra.Msg)
	}
	if rb.HasMsg {
		tb.Msgs = append(tb.Msgs, rb.Msg)
	}
	return
}
