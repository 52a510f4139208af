# immortald, FROM scratch: no base image can be pulled on the build machines.
# Build with `make image`: it compiles bin/immortald-linux (static, CGO off)
# first, and .dockerignore keeps the build context to that one file and an
# empty directory.
FROM scratch
COPY bin/immortald-linux /immortald
# The counter kind's program (cmd/counter), for tests and examples of command lives.
COPY bin/counter-linux /counter
# scratch has no directory the non-root user may write to. /data is one (an
# empty directory copied with its owner set), so that `docker run immortald:dev`
# with no endpoints can keep its embedded etcd in /data/immortald.etcd.
COPY --chown=65532:65532 bin/empty /data
WORKDIR /data
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/immortald"]
CMD ["run"]
