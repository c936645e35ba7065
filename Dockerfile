# The harmony binary as an image: one image runs every role (`harmony serve`).
FROM node:24-bookworm-slim
WORKDIR /app
ENV NODE_ENV=production
COPY package.json package-lock.json ./
RUN npm ci --omit=dev --no-audit --no-fund
COPY bin ./bin
COPY src ./src
COPY tsconfig.json ./
EXPOSE 8080
USER node
ENTRYPOINT ["node", "bin/harmony.mjs"]
CMD ["serve"]
