/**
 * The hand-over's partition assignment. In its JoinGroup metadata every
 * member lists the partitions it holds (the claims it has started, and the
 * revoked ones still draining); the group's leader keeps partitions where
 * they are (a sticky, balanced assignment), and nothing else.
 */
import { AssignerProtocol, type PartitionAssigner } from "kafkajs"
import { describeError } from "./errors.ts"

export const protocolName = "harmony-handover"

/** What a member announces in its JoinGroup metadata. */
export interface Holdings {
  readonly topic: string
  /** Claims it holds: started, or revoked and still draining. */
  readonly held: ReadonlyArray<{ readonly partition: number; readonly id: string }>
}

/** A member's holdings, or undefined (reported to `invalid`) when its metadata is not ours. */
export const decodeHoldings = (metadata: Buffer, invalid: (reason: string) => void): Holdings | undefined => {
  try {
    const decoded = AssignerProtocol.MemberMetadata.decode(metadata)
    if (decoded === null || decoded.userData.length === 0) {
      invalid("its metadata has no holdings")
      return undefined
    }
    const parsed = JSON.parse(decoded.userData.toString("utf8")) as Holdings
    if (typeof parsed.topic === "string" && Array.isArray(parsed.held)) return parsed
    invalid("its holdings are malformed")
    return undefined
  } catch (error) {
    invalid(`its metadata does not decode (${describeError(error)})`)
    return undefined
  }
}

/**
 * Sticky balanced assignment: members keep what they hold up to their fair
 * share, the rest goes to those below it. Members holding more get the larger
 * shares first, so a stable group keeps every partition where it is.
 */
export const stickyAssignment = (
  partitions: ReadonlyArray<number>,
  members: ReadonlyArray<{ readonly memberId: string; readonly held: ReadonlyArray<number> }>
): Map<string, Array<number>> => {
  if (members.length === 0) return new Map()
  const byId = [...members].sort((a, b) => (a.memberId < b.memberId ? -1 : a.memberId > b.memberId ? 1 : 0))
  const base = Math.floor(partitions.length / members.length)
  const extra = partitions.length % members.length
  /** Each member's share and what it gets, in one record per member. */
  const shares = new Map<string, { quota: number; readonly mine: Array<number> }>()
  const bySize = [...byId].sort((a, b) => b.held.length - a.held.length)
  for (const [index, member] of bySize.entries()) {
    shares.set(member.memberId, { quota: base + (index < extra ? 1 : 0), mine: [] })
  }
  const exists = new Set(partitions)
  const taken = new Set<number>()
  for (const member of byId) {
    const share = shares.get(member.memberId)
    if (share === undefined) continue
    for (const partition of [...member.held].sort((a, b) => a - b)) {
      if (share.mine.length >= share.quota || !exists.has(partition) || taken.has(partition)) continue
      share.mine.push(partition)
      taken.add(partition)
    }
  }
  const free = partitions.filter((p) => !taken.has(p))
  for (const member of byId) {
    const share = shares.get(member.memberId)
    if (share === undefined) continue
    share.mine.push(...free.splice(0, Math.max(0, share.quota - share.mine.length)))
    share.mine.sort((a, b) => a - b)
  }
  return new Map(byId.map((member) => [member.memberId, shares.get(member.memberId)?.mine ?? []]))
}

/** The assigner of a member announcing `holdings()`; `onJoin` runs as it (re)joins the group. */
export const assigner = (member: {
  readonly holdings: () => Holdings
  readonly holdingsOf: (metadata: Buffer) => Holdings | undefined
  readonly onJoin: () => void
}): PartitionAssigner => {
  const { holdings, holdingsOf } = member
  return ({ cluster }) => ({
    name: protocolName,
    version: 1,
    protocol: ({ topics }) => {
      member.onJoin()
      return {
        name: protocolName,
        metadata: AssignerProtocol.MemberMetadata.encode({
          version: 1,
          topics,
          userData: Buffer.from(JSON.stringify(holdings()), "utf8")
        })
      }
    },
    assign: async ({ members, topics }) => {
      const assignment = new Map<string, Record<string, Array<number>>>(members.map((m) => [m.memberId, {}]))
      for (const assigned of topics) {
        const subscribers = members.flatMap((member) => {
          const metadata = AssignerProtocol.MemberMetadata.decode(member.memberMetadata)
          if (metadata === null || !metadata.topics.includes(assigned)) return []
          const held = holdingsOf(member.memberMetadata)
          return [
            {
              memberId: member.memberId,
              held: held?.topic === assigned ? held.held.map((h) => h.partition) : []
            }
          ]
        })
        const available = cluster
          .findTopicPartitionMetadata(assigned)
          .map((m) => m.partitionId)
          .sort((a, b) => a - b)
        for (const [member, owned] of stickyAssignment(available, subscribers)) {
          assignment.set(member, { ...assignment.get(member), [assigned]: owned })
        }
      }
      return [...assignment].map(([member, byTopic]) => ({
        memberId: member,
        memberAssignment: AssignerProtocol.MemberAssignment.encode({
          version: 1,
          assignment: byTopic,
          userData: Buffer.alloc(0)
        })
      }))
    }
  })
}
