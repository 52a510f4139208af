# immortald, FROM scratch: no base image can be pulled on the build machines.
# Build with `make image`: it compiles bin/immortald-linux (static, CGO off)
# first, and .dockerignore keeps the build context to that one file.
FROM scratch
COPY bin/immortald-linux /immortald
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/immortald"]
CMD ["run"]
