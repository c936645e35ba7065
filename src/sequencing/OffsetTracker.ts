/**
 * Which offsets of a partition may be committed: records are registered in
 * offset order and completed in any order (chats sequence and persist
 * independently); the committable position is just past the longest
 * completed prefix. Committing only that prefix is what makes a crash safe:
 * everything after it is replayed.
 *
 * How far a crash replays is also bounded here: it replays everything past
 * the offset the log last confirmed as committed (`committed`), completed or
 * not, and the runner waits for capacity before registering more, so no more
 * records than the actors' dedupe window ever sit past it — a replayed record
 * is always recognised as already sequenced.
 */
import { Effect } from "effect"

export class OffsetTracker {
  /** Registered and not yet part of the completed prefix, in offset order. */
  private readonly pending: Array<number> = []
  private readonly done = new Set<number>()
  /** The completed prefix the log has not confirmed as committed yet, in offset order. */
  private readonly uncommitted: Array<number> = []
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
      this.uncommitted.push(head)
      this.next = head + 1
    }
    this.wake()
  }

  /** The log confirmed `next` as the committed offset: what lies before it is never replayed. */
  committed(next: number): void {
    while (this.uncommitted[0] !== undefined && this.uncommitted[0] < next) this.uncommitted.shift()
    this.wake()
  }

  /** The offset to commit (the next record to read); before any completion, the first registered offset. */
  get committable(): number | undefined {
    return this.next
  }

  /** Records past the last confirmed commit: what a crash now would replay. */
  get inFlight(): number {
    return this.pending.length + this.uncommitted.length
  }

  /** Waits for the next completion or confirmed commit. */
  readonly changed: Effect.Effect<void> = Effect.callback<void>((resume) => {
    this.waiters.push(() => resume(Effect.void))
  })

  private wake() {
    if (this.waiters.length === 0) return
    const waiters = this.waiters
    this.waiters = []
    for (const wake of waiters) wake()
  }
}
