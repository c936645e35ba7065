/**
 * Rules of a chat that hold the same over HTTP and over the WebSocket, so the
 * two transports call them rather than each spelling them out.
 */
import { Effect } from "effect"
import type { ChatId, Role, UserId } from "../schema/Domain.ts"
import { NotFound, type Unavailable } from "../schema/Errors.ts"
import type { Chats } from "../state/Chats.ts"
import type { Membership } from "../state/Membership.ts"
import type { Fanout } from "./Fanout.ts"
import type { History } from "./History.ts"

/**
 * The caller's role in a chat. A chat the caller is not a member of is
 * indistinguishable from one that does not exist: both are `not_found`
 * (docs/protocol.md "Errors").
 */
export const memberRole = (
  membership: Membership["Service"],
  chatId: ChatId,
  userId: UserId
): Effect.Effect<Role, NotFound | Unavailable> =>
  Effect.flatMap(membership.roleOf(chatId, userId), (role) =>
    role._tag === "Some"
      ? Effect.succeed(role.value)
      : Effect.fail(new NotFound({ message: `chat ${chatId} not found` }))
  )

/**
 * Marks a chat read up to `seq` for a member, then tells the chat's other
 * members with a `read` frame. Membership comes first (cached), so a
 * stranger's read costs no store lookup; `seq` is clamped to the chat's last
 * seq, so a read position never runs ahead of the chat. The read position is
 * what counts: a frame the fanout cannot publish is logged, not an error.
 */
export const markRead = (
  services: {
    readonly membership: Membership["Service"]
    readonly history: History["Service"]
    readonly chats: Chats["Service"]
    readonly fanout: Fanout["Service"]
  },
  userId: UserId,
  chatId: ChatId,
  seq: number
): Effect.Effect<void, NotFound | Unavailable> =>
  Effect.gen(function* () {
    yield* memberRole(services.membership, chatId, userId)
    const clamped = yield* services.history.clampToLastSeq(chatId, seq)
    yield* services.chats.markRead(userId, chatId, clamped)
    yield* services.fanout
      .publishFrame(chatId, userId, { type: "read", chatId, userId, seq: clamped })
      .pipe(Effect.catchTag("CacheError", (error) => Effect.logWarning("read not published", error)))
  })
