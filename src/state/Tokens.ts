/**
 * Access tokens (short-lived JWTs, HS256 via `jose`) and refresh tokens
 * (`<id>.<secret>`, random, stored as a SHA-256 of the secret).
 */
import { Context, Duration, Effect, Layer, Option, Redacted, Schema } from "effect"
import { errors as JoseErrors, jwtVerify, SignJWT } from "jose"
import { createHash, randomBytes, timingSafeEqual } from "node:crypto"
import { existsSync, mkdirSync, readFileSync, writeFileSync } from "node:fs"
import { join } from "node:path"
import { UserId } from "../schema/Domain.ts"
import { Unauthorized } from "../schema/Errors.ts"

export interface TokenSettings {
  readonly secret: Redacted.Redacted<string>
  readonly accessTokenTtl: Duration.Duration
  readonly refreshTokenTtl: Duration.Duration
}

/** `fid`: the login (refresh-token family) the token belongs to, so ending the login ends its access tokens. */
const Claims = Schema.Struct({ sub: UserId, exp: Schema.Number, fid: Schema.optional(Schema.String) })
const decodeClaims = Schema.decodeUnknownEffect(Claims)

export interface RefreshToken {
  readonly id: string
  readonly secret: string
  readonly token: string
}

/** A refresh token: a 16-character id, a dot, a 43-character secret (32 bytes, base64url). */
const RefreshTokenShape = /^[A-Za-z0-9_-]{16}\.[A-Za-z0-9_-]{43}$/

export class Tokens extends Context.Service<
  Tokens,
  {
    readonly accessTokenTtl: Duration.Duration
    readonly refreshTokenTtl: Duration.Duration
    readonly issueAccess: (userId: UserId, familyId: string) => Effect.Effect<string>
    /** Fails with Unauthorized for a missing, forged, malformed or expired token. */
    readonly verifyAccess: (token: string) => Effect.Effect<
      {
        readonly userId: UserId
        readonly expiresAt: number
        /** Absent only in tokens issued before logins were carried in the token. */
        readonly familyId: string | undefined
      },
      Unauthorized
    >
    readonly newRefresh: () => RefreshToken
    /** Splits `<id>.<secret>`; fails with Unauthorized when malformed. */
    readonly parseRefresh: (
      token: string
    ) => Effect.Effect<{ readonly id: string; readonly secret: string }, Unauthorized>
    readonly hashSecret: (secret: string) => string
    readonly secretMatches: (secret: string, hash: string) => boolean
  }
>()("harmony/state/Tokens") {
  static readonly layer = (settings: TokenSettings) =>
    Layer.sync(Tokens, () => {
      const key = new TextEncoder().encode(Redacted.value(settings.secret))
      const ttlSeconds = Math.max(1, Math.floor(Duration.toSeconds(settings.accessTokenTtl)))
      const hashSecret = (secret: string) => createHash("sha256").update(secret).digest("base64url")
      return Tokens.of({
        accessTokenTtl: settings.accessTokenTtl,
        refreshTokenTtl: settings.refreshTokenTtl,
        issueAccess: (userId, familyId) =>
          Effect.promise(() =>
            new SignJWT({ fid: familyId })
              .setProtectedHeader({ alg: "HS256", typ: "JWT" })
              .setSubject(userId)
              .setIssuedAt()
              .setExpirationTime(`${ttlSeconds}s`)
              .sign(key)
          ),
        verifyAccess: (token) =>
          Effect.tryPromise({
            try: () => jwtVerify(token, key, { algorithms: ["HS256"] }),
            catch: (error) =>
              new Unauthorized({
                message: error instanceof JoseErrors.JWTExpired ? "access token expired" : "invalid access token"
              })
          }).pipe(
            Effect.flatMap(({ payload }) => decodeClaims(payload)),
            Effect.map((claims) => ({ userId: claims.sub, expiresAt: claims.exp * 1000, familyId: claims.fid })),
            Effect.catchTag("SchemaError", () => Effect.fail(new Unauthorized({ message: "invalid access token" })))
          ),
        newRefresh: () => {
          const id = randomBytes(12).toString("base64url")
          const secret = randomBytes(32).toString("base64url")
          return { id, secret, token: `${id}.${secret}` }
        },
        parseRefresh: (token) => {
          const [id, secret] = RefreshTokenShape.test(token) ? token.split(".") : []
          return id === undefined || secret === undefined
            ? Effect.fail(new Unauthorized({ message: "invalid refresh token" }))
            : Effect.succeed({ id, secret })
        },
        hashSecret,
        secretMatches: (secret, hash) => {
          const actual = Buffer.from(hashSecret(secret))
          const expected = Buffer.from(hash)
          return actual.length === expected.length && timingSafeEqual(actual, expected)
        }
      })
    })

  /**
   * The signing secret: the configured one, or (embedded mode only) a
   * development secret generated once and kept in the data directory so
   * sessions survive restarts.
   */
  static readonly devSecret = (configured: Option.Option<Redacted.Redacted<string>>, dataDir: string) =>
    Effect.gen(function* () {
      if (Option.isSome(configured)) return { secret: configured.value, generated: false }
      const file = join(dataDir, "jwt-secret")
      const secret = yield* Effect.sync(() => {
        if (existsSync(file)) return readFileSync(file, "utf8").trim()
        mkdirSync(dataDir, { recursive: true })
        const generated = randomBytes(48).toString("base64url")
        writeFileSync(file, generated, { mode: 0o600 })
        return generated
      })
      return { secret: Redacted.make(secret), generated: true }
    })
}
