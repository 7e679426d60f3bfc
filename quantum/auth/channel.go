package auth

import (
	"context"
	"fmt"

	"qkdkms/quantum"
)

// Channel records a session's classical messages in two transcripts (sent
// and received) and authenticates both at the end with Confirm. Messages
// pass through unchanged; nothing read from the channel may be trusted, and
// no key derived from the session may be used, until Confirm succeeded.
type Channel struct {
	inner quantum.Channel
	sent  *Transcript
	recvd *Transcript
}

var _ quantum.Channel = (*Channel)(nil)

// NewChannel wraps inner; both parties use the same hash key.
func NewChannel(inner quantum.Channel, h Hash) *Channel {
	return &Channel{inner: inner, sent: h.NewTranscript(), recvd: h.NewTranscript()}
}

// Send records and sends msg.
func (c *Channel) Send(ctx context.Context, msg []byte) error {
	if err := c.inner.Send(ctx, msg); err != nil {
		return err
	}
	c.sent.Add(msg)
	return nil
}

// Recv receives and records the next message.
func (c *Channel) Recv(ctx context.Context) ([]byte, error) {
	msg, err := c.inner.Recv(ctx)
	if err != nil {
		return nil, err
	}
	c.recvd.Add(msg)
	return msg, nil
}

// Confirm exchanges transcript tags: it sends the tag of everything sent
// under sendPad and checks the peer's tag of everything received under
// recvPad. The peer's sendPad is this side's recvPad. Both pads must be
// fresh secret key, never used before. The tags themselves are not part of
// the transcripts.
func (c *Channel) Confirm(ctx context.Context, sendPad, recvPad []byte) error {
	tag, err := c.sent.Tag(sendPad)
	if err != nil {
		return err
	}
	if err := c.inner.Send(ctx, tag[:]); err != nil {
		return fmt.Errorf("auth: send transcript tag: %w", err)
	}
	peer, err := c.inner.Recv(ctx)
	if err != nil {
		return fmt.Errorf("auth: receive transcript tag: %w", err)
	}
	if err := c.recvd.Verify(recvPad, peer); err != nil {
		return fmt.Errorf("auth: peer transcript: %w", err)
	}
	return nil
}
