/**
 * Which offsets of a partition may be committed: records are registered in
 * offset order and completed in any order (chats sequence and persist
 * independently); the committable position is just past the longest
 * completed prefix. Committing only that prefix is what makes a crash safe:
 * everything after it is replayed.
 */
export class OffsetTracker {
  private readonly pending: Array<number> = []
  private readonly done = new Set<number>()
  private next: number | undefined

  register(offset: number): void {
    this.pending.push(offset)
    this.next ??= offset
  }

  complete(offset: number): void {
    this.done.add(offset)
    while (this.pending.length > 0 && this.done.has(this.pending[0]!)) {
      const head = this.pending.shift()!
      this.done.delete(head)
      this.next = head + 1
    }
  }

  /** The offset to commit (the next record to read), or undefined before anything completed. */
  get committable(): number | undefined {
    return this.next
  }

  /** Records registered but not yet completed. */
  get inFlight(): number {
    return this.pending.length
  }
}
