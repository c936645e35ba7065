/**
 * The Presence port: who is online in a chat, across nodes. Each node
 * reports the users it hosts with a heartbeat that expires, so a node that
 * dies without a word (SIGKILL) drops out within the TTL. A user with
 * sessions on several nodes is one presence. Redis in cluster mode, in-process
 * in embedded mode (Redis.ts, Memory.ts); both pass
 * test/contract/Presence.contract.ts.
 */
import { Context } from "effect"
import type { Duration, Effect } from "effect"
import type { CacheError } from "./Cache.ts"

export class Presence extends Context.Service<
  Presence,
  {
    /**
     * Marks `userId` online in each of `chatIds` on behalf of `nodeId` until
     * `ttl` from now (a heartbeat renews it). Answers the chats in which the
     * user was not online before on any node (they have just joined).
     */
    readonly enter: (
      nodeId: string,
      userId: string,
      chatIds: ReadonlyArray<string>,
      ttl: Duration.Input
    ) => Effect.Effect<ReadonlyArray<string>, CacheError>
    /**
     * Removes `nodeId`'s presence of `userId` in `chatId`; answers whether the
     * user is now offline in the chat on every node (they have just left).
     */
    readonly leave: (nodeId: string, userId: string, chatId: string) => Effect.Effect<boolean, CacheError>
    /** The users online in a chat now, on any node, each once. */
    readonly online: (chatId: string) => Effect.Effect<ReadonlyArray<string>, CacheError>
  }
>()("harmony/ports/Presence") {}
