/**
 * Which offsets of a partition may be committed: records are registered in
 * offset order and completed in any order (chats sequence and persist
 * independently); the committable position is just past the longest
 * completed prefix. Committing only that prefix is what makes a crash safe:
 * everything after it is replayed.
 *
 * How far a crash replays is also bounded here: the runner waits for
 * capacity before registering more, so no more records than the actors'
 * dedupe window ever sit past the committed position — a replayed record is
 * always recognised as already sequenced.
 */
import { Effect } from "effect"

export class OffsetTracker {
  private readonly pending: Array<number> = []
  private readonly done = new Set<number>()
  private next: number | undefined
  private waiters: Array<() => void> = []

  register(offset: number): void {
    this.pending.push(offset)
    this.next ??= offset
  }

  /** Idempotent: a record processed again (an actor restarted on it) may complete twice. */
  complete(offset: number): void {
    if (this.next !== undefined && offset < this.next) return
    this.done.add(offset)
    for (let head = this.pending[0]; head !== undefined && this.done.has(head); head = this.pending[0]) {
      this.pending.shift()
      this.done.delete(head)
      this.next = head + 1
    }
    if (this.waiters.length > 0) {
      const waiters = this.waiters
      this.waiters = []
      for (const wake of waiters) wake()
    }
  }

  /** The offset to commit (the next record to read); before any completion, the first registered offset. */
  get committable(): number | undefined {
    return this.next
  }

  /** Records past the committable position: what a crash now would replay. */
  get inFlight(): number {
    return this.pending.length
  }

  /** Waits until fewer than `limit` records are in flight. */
  awaitCapacity(limit: number): Effect.Effect<void> {
    return Effect.suspend(() =>
      this.pending.length < limit
        ? Effect.void
        : Effect.callback<void>((resume) => {
            this.waiters.push(() => resume(Effect.void))
          }).pipe(Effect.andThen(this.awaitCapacity(limit)))
    )
  }
}
