# syntax=docker/dockerfile:1
# escape=`
FROM mcr.microsoft.com/dotnet/sdk:8.0 AS build
WORKDIR C:\src
COPY . .
RUN dotnet publish -c Release `
    -o C:\out
FROM mcr.microsoft.com/dotnet/aspnet:8.0
COPY --from=build C:\out C:\app
ENTRYPOINT ["dotnet", "C:\\app\\web.dll"]
