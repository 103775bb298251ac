FROM alpine:3.20
FROBNICATE the widgets
RUN echo still fine
