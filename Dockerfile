# The harmony binary as an image: one image runs every role (`harmony serve`).

# The web client (served at /) is built with the dev dependencies, in a stage of its own.
FROM node:24-bookworm-slim AS web
WORKDIR /app
COPY package.json package-lock.json ./
RUN npm ci --no-audit --no-fund --ignore-scripts
COPY tsconfig.json ./
COPY scripts/build-web.mjs ./scripts/
COPY web ./web
COPY src ./src
RUN node scripts/build-web.mjs

FROM node:24-bookworm-slim
WORKDIR /app
ENV NODE_ENV=production
COPY package.json package-lock.json ./
RUN npm ci --omit=dev --no-audit --no-fund
COPY bin ./bin
COPY src ./src
COPY tsconfig.json ./
COPY --from=web /app/dist/web ./dist/web
EXPOSE 8080
USER node
ENTRYPOINT ["node", "bin/harmony.mjs"]
CMD ["serve"]
