


# Leading comments and blank lines

# more commentary
FROM alpine:3.20

# between instructions

RUN echo hi   # not a comment, part of the command

