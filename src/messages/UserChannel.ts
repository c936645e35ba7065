/**
 * The user's own channel (docs/protocol.md "The user's own channel"): one
 * pub/sub channel per user, carrying the frames of their chat list
 * (`chat_added`, `chat_removed`, `chat_updated`, `chat_deleted`) to every
 * session of theirs on every node, without subscribing to anything. The
 * payload is the text frame itself: these frames are rare, so sessions
 * decode them.
 */
import { Effect } from "effect"
import type { CacheError } from "../ports/Cache.ts"
import type { PubSub } from "../ports/PubSub.ts"
import type { UserId } from "../schema/Domain.ts"
import { encodeServerFrame, type UserChannelFrame } from "../schema/ServerFrames.ts"

export const userChannelOf = (userId: string) => `user:${userId}`

/** How many users' channels one frame is published on at once. */
const PublishConcurrency = 16

/** Publishes one frame, encoded once, on the channels of `userIds`. */
export const publishToUsers = (
  pubsub: PubSub["Service"],
  userIds: ReadonlyArray<UserId>,
  frame: UserChannelFrame
): Effect.Effect<void, CacheError> => {
  const text = encodeServerFrame(frame)
  return Effect.forEach(userIds, (userId) => pubsub.publish(userChannelOf(userId), text), {
    concurrency: PublishConcurrency,
    discard: true
  })
}
