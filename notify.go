package sprocketspg

import (
	"context"
	"fmt"

	"github.com/sprockets/sprocketspg/internal/pgchannel"
)

// notifySQL sends a notification with the channel and the payload as
// parameters, so that neither is ever spliced into SQL.
const notifySQL = "SELECT pg_notify($1, $2)"

// ErrInvalidNotification is matched by the error of a Notify whose
// channel or payload PostgreSQL would not take: a channel name that is
// empty, longer than 63 bytes, not UTF-8 or holding a NUL, or a payload
// of 8000 bytes or more, not UTF-8 or holding a NUL. package listen refuses the same channel names.
var ErrInvalidNotification = pgchannel.ErrInvalid

// Notify sends payload to the listeners of channel (LISTEN, or package
// listen), with the rules of Execute, whose observers see it under the
// metric name of ctx. The channel is the name as written: case and every
// character count, as a quoted identifier's do. The notification is
// delivered at once, outside any transaction; use Tx.Notify to send it
// only if a transaction commits.
func (p *Pool) Notify(ctx context.Context, channel, payload string) error {
	if err := validateNotification(channel, payload); err != nil {
		return err
	}
	_, err := p.Execute(ctx, notifySQL, channel, payload)
	return err
}

// Notify sends payload to the listeners of channel when the transaction
// commits; PostgreSQL drops it when the transaction rolls back. The rules
// are those of Pool.Notify.
func (tx *Tx) Notify(ctx context.Context, channel, payload string) error {
	if err := validateNotification(channel, payload); err != nil {
		return err
	}
	_, err := tx.Execute(ctx, notifySQL, channel, payload)
	return err
}

func validateNotification(channel, payload string) error {
	if err := pgchannel.Validate(channel); err != nil {
		return fmt.Errorf("notify: %w", err)
	}
	if err := pgchannel.ValidatePayload(payload); err != nil {
		return fmt.Errorf("notify %q: %w", channel, err)
	}
	return nil
}
