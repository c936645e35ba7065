/**
 * The recent messages of the chats whose actors are active on this node:
 * recovery answers a reconnecting client from here, without the store, when
 * the actor's ring reaches back far enough. Provided by the sequencing layer
 * (sequencing/ActiveChats.ts); a node without actors knows none.
 */
import { Context, Layer } from "effect"
import type { ChatId, LogEntry } from "../schema/Domain.ts"

export class RecentMessages extends Context.Service<
  RecentMessages,
  {
    /** Log entries with seq > sinceSeq, oldest first, if the chat's actor is active here and its ring reaches back that far. */
    readonly since: (chatId: ChatId, sinceSeq: number) => ReadonlyArray<LogEntry> | undefined
    /** The chat's last seq as its local actor knows it. */
    readonly lastSeq: (chatId: ChatId) => number | undefined
    /** The chat's epoch as its local actor knows it. */
    readonly epoch: (chatId: ChatId) => string | undefined
  }
>()("harmony/messages/RecentMessages") {
  static readonly none = Layer.succeed(
    RecentMessages,
    RecentMessages.of({ since: () => undefined, lastSeq: () => undefined, epoch: () => undefined })
  )
}
