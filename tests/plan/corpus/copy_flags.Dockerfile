FROM node:20-alpine
COPY --chown=node:node --chmod=644 package.json /home/node/app/
COPY --link --from=node:20 /usr/local/bin/node /usr/local/bin/node
COPY --parents ./src/**/*.js /app/
USER node
